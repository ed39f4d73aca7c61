"""Generated gRPC stubs of the Switchyard API (see protos/switchyard/v1/*.proto)."""
