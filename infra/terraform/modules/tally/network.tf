# Either a small dedicated VPC (one public subnet, internet gateway) or the
# account's default VPC. There is no NAT gateway: the single instance sits in
# the public subnet behind its security group, which keeps the bill small.

resource "aws_vpc" "this" {
  count = var.create_vpc ? 1 : 0

  #checkov:skip=CKV2_AWS_11:Flow logs cost more than the whole single-server deployment; Traefik access logs and the security group cover its one host.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(local.tags, { Name = "${var.name}-vpc" })
}

# Strip every rule from the VPC's default security group so nothing attached
# to it by mistake is reachable.
resource "aws_default_security_group" "this" {
  count = var.create_vpc ? 1 : 0

  vpc_id  = aws_vpc.this[0].id
  ingress = []
  egress  = []
  tags    = merge(local.tags, { Name = "${var.name}-default-deny" })
}

resource "aws_internet_gateway" "this" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.name}-igw" })
}

resource "aws_subnet" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id            = aws_vpc.this[0].id
  cidr_block        = var.public_subnet_cidr
  availability_zone = local.availability_zone
  # The instance gets its public address from the Elastic IP only.
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route_table" "public" {
  count = var.create_vpc ? 1 : 0

  vpc_id = aws_vpc.this[0].id
  tags   = merge(local.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_default" {
  count = var.create_vpc ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count = var.create_vpc ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

# Swarm workers go to the region's other zones: one public subnet each, on
# the same route table. A worker gets a public address of its own for its
# outbound traffic (images, packages, SSM) instead of a NAT gateway, which
# would cost more than a small worker; its security group admits nothing
# from the internet (swarm.tf).
resource "aws_subnet" "public_extra" {
  count = local.swarm && local.workers > 0 ? min(length(var.extra_public_subnet_cidrs), length(local.zones) - 1) : 0

  vpc_id                  = aws_vpc.this[0].id
  cidr_block              = var.extra_public_subnet_cidrs[count.index]
  availability_zone       = local.zones[count.index + 1]
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-public-${local.zones[count.index + 1]}" })
}

resource "aws_route_table_association" "public_extra" {
  count = length(aws_subnet.public_extra)

  subnet_id      = aws_subnet.public_extra[count.index].id
  route_table_id = aws_route_table.public[0].id
}

# The database's subnets: two zones (RDS requires them, Multi-AZ uses them),
# no route table association, so only the VPC's local route: no internet.
resource "aws_subnet" "private" {
  count = local.rds ? 2 : 0

  vpc_id                  = aws_vpc.this[0].id
  cidr_block              = var.private_subnet_cidrs[count.index]
  availability_zone       = local.zones[count.index]
  map_public_ip_on_launch = false

  tags = merge(local.tags, { Name = "${var.name}-private-${local.zones[count.index]}" })
}

data "aws_vpc" "default" {
  count   = var.create_vpc ? 0 : 1
  default = true
}

data "aws_subnets" "default" {
  count = var.create_vpc ? 0 : 1

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "availability-zone"
    values = [local.availability_zone]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

locals {
  vpc_id    = var.create_vpc ? aws_vpc.this[0].id : data.aws_vpc.default[0].id
  subnet_id = var.create_vpc ? aws_subnet.public[0].id : data.aws_subnets.default[0].ids[0]
  # Host i of the swarm (0 = the manager) in zone i modulo the zones used.
  swarm_subnet_ids = concat([local.subnet_id], aws_subnet.public_extra[*].id)
}
