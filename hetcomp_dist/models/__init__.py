"""The one model contract shared by teachers and students."""
