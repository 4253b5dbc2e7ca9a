# jupyterhub_config.py for the cluster 'tamarack'; made by
# `hpcgate deploy-files` from login-node-slurm.yaml. Install it as /etc/hpcgate/jupyterhub_config.py
# (root:hpcgate-hub, 0640). The hub runs as hpcgate-hub, never as root: see
# hpcgate-hub.service and the sudoers file next to this one.
import os
from pathlib import Path

c = get_config()  # noqa: F821


def _credential(name: str) -> str:
    """A secret systemd handed to the hub (LoadCredential=), readable by the hub alone."""
    where = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(where, name).read_text().strip() if where else ""


# --- Where users come in: the proxy, hpcgate-nginx, started by the hub as its own child.
c.JupyterHub.bind_url = 'https://jupyter.example.org/'
# TLS towards browsers: the key must be readable by hpcgate-hub (the proxy is its
# child). A port below 1024 needs CAP_NET_BIND_SERVICE: the unit grants that one capability.
c.JupyterHub.ssl_cert = '/etc/hpcgate/tls/hub.crt'
c.JupyterHub.ssl_key = '/etc/hpcgate/tls/hub.key'
c.JupyterHub.proxy_class = "hpcgate-nginx"
c.NginxProxy.state_dir = '/var/lib/hpcgate-hub/nginx'
c.NginxProxy.pid_file = '/var/lib/hpcgate-hub/jupyterhub-proxy.pid'

# --- The hub's API, where jobs' launchers report: the policy's connection.hub_api_url.
# In reverse mode that is a loopback address, reached through each job's tunnel.
c.JupyterHub.hub_bind_url = 'http://jupyter.cluster.example.org:8081'

# --- State: all of it in the hub's own state directory (systemd's StateDirectory=).
c.JupyterHub.db_url = "sqlite:////var/lib/hpcgate-hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = '/var/lib/hpcgate-hub/jupyterhub_cookie_secret'
c.JupyterHub.pid_file = '/var/lib/hpcgate-hub/jupyterhub.pid'
c.ActivityStore.db_path = '/var/lib/hpcgate-hub/hpcgate-activity.sqlite'
# auth_state (the user's Unix identity) is encrypted with this key: LoadCredential=crypt-key.
if _credential("crypt-key"):
    os.environ["JUPYTERHUB_CRYPT_KEY"] = _credential("crypt-key")
# Jobs outlive a hub restart (an upgrade): the hub finds them again in its database.
c.JupyterHub.cleanup_servers = False

# --- hpcgate: the spawner, its site policy (checked here: a bad policy stops the hub with the
# reason) and hpcgate's pages and APIs.
from gateway.hub import configure  # noqa: E402

configure(c, '/etc/hpcgate/login-node-slurm.yaml')
c.BatchSpawner.default_url = "/lab"
