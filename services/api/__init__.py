"""The API: the hub's HTTP application and FHIR REST layer, composed from the routers each part owns."""
