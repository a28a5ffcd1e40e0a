"""Flame's ``types_pb2_grpc``: ``types.proto`` declares no service, so, as in Flame's, nothing is here."""
