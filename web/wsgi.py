"""WSGI entry point for gunicorn (``satchel serve``): the app from the environment's settings."""

from web.app import create_app

application = create_app()
