"""One manifest builder per public MedReID dataset (see ``registry.BUILDERS``)."""
