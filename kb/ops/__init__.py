"""Operations on the platform's state: backups and restores."""
