"""The operators' side: the admin gRPC API, its HTTP side (metrics, dashboard, health) and the documents both show."""
