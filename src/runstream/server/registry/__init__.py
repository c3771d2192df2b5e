"""The RegistryService: registered models, versions, stages, aliases, reviews and lineage."""
