"""What every Switchyard service shares: config loading, errors, gRPC server bootstrap, metrics."""
