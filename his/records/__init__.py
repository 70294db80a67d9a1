"""Medical records: encounters, diagnoses, e-prescriptions, signatures and pharmacy dispensing."""
