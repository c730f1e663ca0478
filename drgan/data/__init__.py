"""Datasets: format, validation, phantom retinas, masks from photographs, lesions, loaders."""
