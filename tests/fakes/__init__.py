"""Fakes of remote services, at the HTTP level: the code under test runs its real SDK code paths."""
