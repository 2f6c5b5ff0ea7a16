"""consulspawner: JupyterHub servers as short-lived members of a Consul Connect service mesh."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so the pure modules (naming, plan) and the janitor do not pull in
    # JupyterHub and Docker.
    if name == "ConsulSpawner":
        from .spawner import ConsulSpawner

        return ConsulSpawner
    raise AttributeError(name)


__all__ = ["ConsulSpawner"]
