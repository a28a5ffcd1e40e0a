"""The json serializer: JSON text in UTF-8, for values that must be readable outside Python."""
