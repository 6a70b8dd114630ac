"""Training configs (ml_collections ``get_config(variant)`` files).

``siammae.py`` holds every variant; ``--config`` takes its path with the
variant after a colon. From a checkout the repository's ``configs/siammae.py``
(which re-exports this module) or ``siammae_jax/configs/siammae.py``; from an
installed package the file's path, e.g.
``--config "$(python -c 'import siammae_jax.configs.siammae as m; print(m.__file__)'):tiny"``.
In Python: ``from siammae_jax.configs import siammae; siammae.get_config("tiny")``.
"""
