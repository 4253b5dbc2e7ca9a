"""The JupyterHub side of hpcgate: spawner, site policy, tunnels, depots and the `hpcgate` command."""
