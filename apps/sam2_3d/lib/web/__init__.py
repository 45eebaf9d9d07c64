"""HTTP-side hardening of monailabel's web app, installed by the app when the server starts."""
