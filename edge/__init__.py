"""The edge node: the request path, the cache store, the caching policy."""
