"""The origin mock: a small shop with a catalog API and static assets."""
