"""Speaker enrollment: enrollment speech -> speaker embedding (d-vector) -> profile file."""
