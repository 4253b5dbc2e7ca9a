"""Side-by-side benchmarks against the anchors (batchspawner, jupyterhub-ldapauthenticator, ssh -L)."""
