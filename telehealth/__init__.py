"""Video consultations: rooms, lobby, signalling, the aiortc media service, consult notes."""
