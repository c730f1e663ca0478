"""Datasets: the format (format, labels, decode, dataset_writer), validation, preprocessing, loaders
(dataset, loaders), phantom retinas, masks from photographs, lesions (lesions, lesion_stats,
lesion_fit), contact sheets and the importers of public releases."""
