"""The xDS control plane: Envoy's listeners, routes, clusters and endpoints, pushed over ADS."""
