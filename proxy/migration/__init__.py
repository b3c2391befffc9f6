"""Migration tools: migrate, verify, validate, archive (cutover and rollback drive a running proxy:
proxy.control).

Built on the Backend protocol only, so the same code runs offline (the command opens the stores
itself and holds their locks) or inside a running proxy, where `Live` (proxy.data.live) lets it
coordinate with traffic: the per-key locks, the replication queue and the router in force.
"""
