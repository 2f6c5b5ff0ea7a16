# Installed as /etc/jupyter/jupyter_server_config.py in consulspawner/notebook.
# The container runs the single-user server as root (development image): let it.
c = get_config()  # noqa: F821  (provided by traitlets when Jupyter loads this file)
c.ServerApp.allow_root = True
