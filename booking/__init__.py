"""Schedules, online booking, queue numbers, check-in, the queue board, reminders and no-shows."""
