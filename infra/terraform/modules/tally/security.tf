# One security group for the server: HTTP/HTTPS from everywhere (it is a
# public website), SSH only from the operator's CIDRs (none by default: SSM
# Session Manager needs no inbound port), egress only on the ports the
# bootstrap and the stack need.

resource "aws_security_group" "instance" {
  name_prefix = "${var.name}-server-"
  description = "Tally server: public HTTP/HTTPS, SSH from allowed CIDRs only"
  vpc_id      = local.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-server" })

  lifecycle {
    # A replacement group must exist before the old one can be detached.
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  #checkov:skip=CKV_AWS_260:Public website: port 80 only answers with a redirect to HTTPS, so http:// links keep working.
  security_group_id = aws_security_group.instance.id
  description       = "HTTP (redirects to HTTPS)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS (Traefik)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.ssh_allowed_cidrs)

  security_group_id = aws_security_group.instance.id
  description       = "SSH from an operator network"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "tcp" {
  for_each = toset([for p in var.allowed_egress_tcp_ports : tostring(p)])

  security_group_id = aws_security_group.instance.id
  description       = "Outbound TCP ${each.value} (packages, images, git, AWS APIs, ACME)"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}
