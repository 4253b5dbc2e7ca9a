"""Data depots: group project directories on the shared filesystem, visible to exactly the right users.

The filesystem enforces access (directory group, setgid, mode, ACLs); hpcgate provisions the
directories, checks them for drift, and shows each user links to the depots their groups allow.

- `access.depots_for(policy, groups)`: which depots a user sees, and how (pure).
- `provision`: the desired state of a depot directory, the drift from it, and the repair.
- `groups.GroupResolver`: a group's gid from the directory (gidNumber) or the local group database.
- `links`: the `depots/` entry the launcher makes in the user's server (spawner and launcher side).
- the hub's "Data depots" page, `/hub/depots`, is `gateway.hub.depots_page`.
- `command`: `hpcgate depot create|check|list`.
- `demo_data`: generated WAV recordings for the demo's soundscape-lab depot.
"""

from gateway.depots.access import UserDepot, depots_for

__all__ = ["UserDepot", "depots_for"]
