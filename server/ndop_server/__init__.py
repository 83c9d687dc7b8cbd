"""ndop register server: the register store, its publication, and the gRPC service."""
