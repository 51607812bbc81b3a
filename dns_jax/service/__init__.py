"""The retrieval service (`dns-jax serve`): an HTTP API and a web page over a built collection.

    from dns_jax.service.collection import Collection
    from dns_jax.service.app import Settings, create_app
    app = create_app(Collection("WORK"), Settings(token=None))

`collection.py` is the only module that touches the work directory; see docs/service.md.
"""
