# Optional A record in an existing Route53 zone, and an HTTPS health check on
# /healthz that probes the Elastic IP directly (with the domain as Host/SNI
# when there is one), so it tests the server, not DNS.

resource "aws_route53_record" "app" {
  count = local.create_dns_record ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain
  type    = "A"
  ttl     = var.dns_ttl
  records = [aws_eip.this.public_ip]
}

resource "aws_route53_health_check" "app" {
  count = var.enable_health_check ? 1 : 0

  type              = "HTTPS"
  ip_address        = aws_eip.this.public_ip
  fqdn              = var.domain != "" ? var.domain : null
  enable_sni        = var.domain != ""
  port              = 443
  resource_path     = "/healthz"
  request_interval  = 30
  failure_threshold = 3

  tags = merge(local.tags, { Name = "${var.name}-healthz" })
}
