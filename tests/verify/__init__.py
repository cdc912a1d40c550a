"""Tests of potluck.verify."""
