# Installed as /etc/jupyter/jupyter_server_config.py in consulspawner/notebook.
# The server runs as the unprivileged user jovyan; the hub's settings (port, base URL, auth)
# come from the environment JupyterHub sets.
c = get_config()  # noqa: F821  (provided by traitlets when Jupyter loads this file)
