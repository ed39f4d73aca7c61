"""The router: registry, tenants, routing policy, Envoy ext_proc and the xDS control plane."""
