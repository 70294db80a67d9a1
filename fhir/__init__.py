"""Keep medical records as FHIR R4 resources: the store, its search and the REST API."""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
