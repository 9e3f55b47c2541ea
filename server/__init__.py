"""The sync server: a store of signed model and catalog versions, served over gRPC."""
