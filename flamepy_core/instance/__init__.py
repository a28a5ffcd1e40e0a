"""The instance runtime: serves a user's ``FlameService`` as ``flame.v1.Instance`` over any transport."""
