"""The proxy as a server: the KeyValue gRPC face and the lifecycle that wires every plane together."""
