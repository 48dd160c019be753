"""Stand-ins for hardware we do not have (the Interbotix arm, its camera), recording every call."""
