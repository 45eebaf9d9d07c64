"""Datastore pieces of the app: DICOM SEG in pure Python (highdicom) and a DICOMweb datastore using it."""
