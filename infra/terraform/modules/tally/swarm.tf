# database = "rds": the stack runs on Docker Swarm. The server of
# compute.tf is the manager (the Elastic IP, Traefik's host-mode ports,
# Prometheus, Alertmanager, Grafana, the backup sidecar on the data volume);
# app_hosts - 1 workers run app replicas. Visitors reach Traefik on the
# manager's Elastic IP, which forwards over the overlay to replicas on every
# node (docs/deploy-aws.md, "Several app hosts", says why not a load
# balancer). Workers join at boot with the token the manager publishes in SSM.

locals {
  # SecureString "<token> <manager address>:2377", written by the manager.
  # Outside ssm_parameter_prefix/*, which the manager may only create, never
  # overwrite: a replaced manager starts a new swarm with a new token.
  swarm_join_parameter = "${local.ssm_parameter_prefix}-swarm/worker-join"
  swarm_join_parameter_arn = (
    "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${local.swarm_join_parameter}"
  )

  # Swarm's node-to-node ports; 2377 (cluster management) is the manager's
  # only, below.
  swarm_peer_ports = {
    gossip_tcp = { protocol = "tcp", port = 7946 }
    gossip_udp = { protocol = "udp", port = 7946 }
    overlay    = { protocol = "udp", port = 4789 }
  }
}

# Every swarm host (the manager too): the peer ports between its members,
# egress to the database, and the internet egress workers need to bootstrap.
resource "aws_security_group" "node" {
  count = local.swarm ? 1 : 0

  name_prefix = "${var.name}-swarm-"
  description = "Tally swarm hosts: swarm ports between members only"
  vpc_id      = local.vpc_id

  tags = merge(local.tags, { Name = "${var.name}-swarm" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "swarm_peers" {
  for_each = local.swarm ? local.swarm_peer_ports : {}

  security_group_id            = aws_security_group.node[0].id
  description                  = "Swarm ${each.key} from swarm hosts"
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.node[0].id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "swarm_peers" {
  for_each = local.swarm ? local.swarm_peer_ports : {}

  security_group_id            = aws_security_group.node[0].id
  description                  = "Swarm ${each.key} to swarm hosts"
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.node[0].id

  tags = local.tags
}

# 2377 on the manager's group (compute.tf's server group) only.
resource "aws_vpc_security_group_ingress_rule" "swarm_manager" {
  count = local.swarm ? 1 : 0

  security_group_id            = aws_security_group.instance.id
  description                  = "Swarm cluster management from swarm hosts"
  ip_protocol                  = "tcp"
  from_port                    = 2377
  to_port                      = 2377
  referenced_security_group_id = aws_security_group.node[0].id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "swarm_manager" {
  count = local.swarm ? 1 : 0

  security_group_id            = aws_security_group.node[0].id
  description                  = "Swarm cluster management to the manager"
  ip_protocol                  = "tcp"
  from_port                    = 2377
  to_port                      = 2377
  referenced_security_group_id = aws_security_group.instance.id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "node_db" {
  count = local.rds ? 1 : 0

  security_group_id            = aws_security_group.node[0].id
  description                  = "PostgreSQL (RDS)"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.db[0].id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "node_tcp" {
  for_each = local.swarm ? toset([for p in var.allowed_egress_tcp_ports : tostring(p)]) : toset([])

  security_group_id = aws_security_group.node[0].id
  description       = "Outbound TCP ${each.value} (packages, images, AWS APIs)"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
  cidr_ipv4         = "0.0.0.0/0"

  tags = local.tags
}

# Workers may read the join parameter and nothing else (plus Session
# Manager): Swarm hands them only the secrets their tasks mount.
resource "aws_iam_role" "worker" {
  count = local.workers > 0 ? 1 : 0

  name_prefix        = "${var.name}-worker-"
  description        = "Tally swarm worker instance role"
  assume_role_policy = local.ec2_assume_role_policy

  tags = local.tags
}

resource "aws_iam_role_policy" "worker" {
  count = local.workers > 0 ? 1 : 0

  name = "tally-swarm-worker"
  role = aws_iam_role.worker[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "SwarmJoinToken"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = local.swarm_join_parameter_arn
    }]
  })
}

resource "aws_iam_role_policy_attachment" "worker_ssm_core" {
  count = local.workers > 0 && var.enable_ssm ? 1 : 0

  role       = aws_iam_role.worker[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "worker" {
  count = local.workers > 0 ? 1 : 0

  name_prefix = "${var.name}-worker-"
  role        = aws_iam_role.worker[0].name
  tags        = local.tags
}

resource "aws_instance" "worker" {
  count = local.workers

  #checkov:skip=CKV_AWS_126:Detailed monitoring is a variable (detailed_monitoring), off by default: the stack ships its own Prometheus and node-exporter.
  #checkov:skip=CKV_AWS_88:A worker's public address carries its outbound traffic only (no NAT gateway); its security group admits swarm peers and nothing from the internet.
  ami                    = local.ami_id
  instance_type          = coalesce(var.worker_instance_type, var.instance_type)
  subnet_id              = local.swarm_subnet_ids[(count.index + 1) % length(local.swarm_subnet_ids)]
  vpc_security_group_ids = [aws_security_group.node[0].id]
  iam_instance_profile   = aws_iam_instance_profile.worker[0].name
  key_name               = var.ssh_key_name
  monitoring             = var.detailed_monitoring
  ebs_optimized          = true

  associate_public_ip_address = true

  user_data_base64            = base64gzip(local.worker_user_data)
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  # A worker keeps nothing: images and task state live on the root volume.
  root_block_device {
    encrypted             = true
    kms_key_id            = var.ebs_kms_key_arn
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    delete_on_termination = true
    tags                  = merge(local.tags, { Name = "${var.name}-worker-${count.index + 1}-root" })
  }

  maintenance_options {
    auto_recovery = "default"
  }

  tags = merge(local.tags, { Name = "${var.name}-worker-${count.index + 1}", TallySwarmRole = "worker" })

  lifecycle {
    ignore_changes = [ami]
  }
}
