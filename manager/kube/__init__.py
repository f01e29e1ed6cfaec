"""The manager as a Kubernetes controller (issue #9).

* ``config``: an ``ApiClient`` from a kubeconfig or the in-cluster service account;
* ``rest``: the few REST calls the adapter makes, through the official client;
* ``store``: ``KubeStore``, the ``ObjectStore`` adapter over the Kubernetes API;
* ``watch``: list + watch with resourceVersion resume (re-list on 410 Gone);
* ``events``: core/v1 Events as ``kubectl describe`` shows them;
* ``leader``: leader election on a ``coordination.k8s.io`` Lease;
* ``app``: ``virtrigaud manager`` (controllers + election + health/metrics endpoints).
"""
