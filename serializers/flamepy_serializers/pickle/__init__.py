"""The pickle serializer: the standard library's pickle, classes and functions travel by reference."""
