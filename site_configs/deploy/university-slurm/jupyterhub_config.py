# jupyterhub_config.py for the cluster 'hopper'; made by
# `hpcgate deploy-files` from university-slurm.yaml. Install it as /etc/hpcgate/jupyterhub_config.py
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
c.JupyterHub.hub_bind_url = 'http://127.0.0.1:8081'

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

# --- Login: search-then-bind against the site's directory (the policy's `directory`).
c.JupyterHub.authenticator_class = "hpcgate-ldap"
c.LDAPAuthenticator.server_urls = ['ldaps://ldap.example.edu:636']
c.LDAPAuthenticator.start_tls = False
c.LDAPAuthenticator.tls_ca_file = '/etc/ssl/certs/example-edu-ca.pem'
c.LDAPAuthenticator.service_dn = 'cn=svc-jupyter,ou=services,dc=example,dc=edu'
# The service account's password arrives as a systemd credential (hpcgate-hub.service:
# LoadCredential): the hub account never reads /etc/hpcgate/ldap-service-password itself.
c.LDAPAuthenticator.service_password = _credential("ldap-password")
# Where people are searched (by uid, in the whole subtree).
c.LDAPAuthenticator.user_search_base = 'dc=example,dc=edu'
c.LDAPAuthenticator.group_search_base = 'ou=groups,dc=example,dc=edu'
# Only members of the policy's groups log in (the same groups sudoers lets the hub act for).
c.LDAPAuthenticator.allowed_groups = {'astro', 'climate', 'hpc-users', 'neuro'}
c.Authenticator.enable_auth_state = True

# --- hpcgate: the spawner, its site policy (checked here: a bad policy stops the hub with the
# reason) and hpcgate's pages and APIs.
from gateway.hub import configure  # noqa: E402

configure(c, '/etc/hpcgate/university-slurm.yaml')
c.BatchSpawner.default_url = "/lab"
