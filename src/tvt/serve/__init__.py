"""The sketch-search web app (``tvt serve``): a FastAPI JSON API and a single static page.

Needs the ``[serve]`` extra (fastapi, uvicorn, python-multipart). See :func:`tvt.serve.app.create_app`.
"""
