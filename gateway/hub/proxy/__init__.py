"""The proxy in front of the hub: `hpcgate-nginx` (nginx.py), with the pure rendering of routes
into nginx's configuration in render.py."""
