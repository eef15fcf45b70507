"""RTP ports and site links: audio to IP consoles, RoIP gateways and other brug sites.

Site-file types: ``rtp`` (:class:`~brug.gateway.rtp.port.RtpPort`) and ``link``
(:class:`~brug.gateway.rtp.link.LinkPort`); squelch types ``stream`` and ``ed137`` and PTT types
``rtp`` and ``ed137`` live in :mod:`brug.gateway.rtp.squelch`. See docs/rtp.md.
"""
