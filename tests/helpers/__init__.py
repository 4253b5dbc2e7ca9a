"""What tests share, in one place: test modules import from here, never from each other or conftest.

lab.py      the lab and its users (paths, running commands as a user, their homes kept clean)
hub.py      a real JupyterHub on the lab and an API client for it
portal.py   a researcher's browser session without a browser
ldap.py     the LDAP authenticator configured as a site would, and its login paths
"""
