"""SSH tunnels between a job's notebook server and the hub host.

- `keys`: a key pair per job and the authorized_keys entry that lets it forward only its own port;
- `sshargs`: pure builders of the OpenSSH command lines and readers of what ssh prints;
- `supervisor`: one supervised `ssh` process, restarted with backoff when it dies (asyncio);
- `client`: the job's reverse tunnel: that supervisor on an event loop in its own thread;
- `endpoint`: the hub host's tunnel endpoint, sshd in inetd mode on sockets with TCP_NODELAY.
- `loginnode`: login-node mode, the hub's own supervised `ssh -L` through a login node to the
  job's node (the same supervisor on the hub's loop; the ssh dies with the hub).

OpenSSH client processes were chosen by measurement (notes/ldap-and-ssh.md): with
aes128-gcm@openssh.com they moved 509-542 MB/s against 354-389 for asyncssh and 253-295 for paramiko
on this kind of machine, at the lowest CPU cost per GiB.
"""
