# The snapshot bucket, the CloudFront distribution in front of it, the IAM
# policies for the publisher and for direct readers, and a CloudWatch alarm
# on the bytes CloudFront serves. See ../../README.md.

locals {
  bucket_name = coalesce(var.bucket_name, "${var.name}-snapshots")
  key_prefix  = var.prefix == "" ? "" : "${var.prefix}/"
  path_prefix = var.prefix == "" ? "" : "/${var.prefix}"
  store_url   = "s3://${local.bucket_name}/${var.prefix}"
  # What readers fetch; leases (locks/) and anything else stay private.
  readable = [
    "${local.key_prefix}chunks/*",
    "${local.key_prefix}chains/*",
    "${local.key_prefix}catalog.json",
    "${local.key_prefix}catalog.json.sigs/*",
  ]
}

data "aws_partition" "current" {}

resource "aws_s3_bucket" "snapshots" {
  #checkov:skip=CKV_AWS_144: cross-region replication is a cost the operator chooses; every object is reproducible by the publisher and mirrors (IPFS, qsync serve) add redundancy
  #checkov:skip=CKV_AWS_18: access logging of a public, content-addressed, read-only store is left to the operator (CloudFront carries the traffic)
  #checkov:skip=CKV2_AWS_62: event notifications have no consumer in this design
  #checkov:skip=CKV_AWS_145: SSE-S3 is the default; pass kms_key_arn for SSE-KMS
  bucket = local.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_versioning" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket                  = aws_s3_bucket.snapshots.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  rule {
    id     = "expire-noncurrent-and-abandoned-uploads"
    status = "Enabled"
    filter {}
    # Garbage collection deletes objects; with versioning they linger as
    # noncurrent versions for this long, then go.
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    # A publish killed mid-upload leaves multipart parts behind.
    abort_incomplete_multipart_upload {
      days_after_initiation = 2
    }
  }
  depends_on = [aws_s3_bucket_versioning.snapshots]
}

resource "aws_s3_bucket_request_payment_configuration" "snapshots" {
  count  = var.requester_pays ? 1 : 0
  bucket = aws_s3_bucket.snapshots.id
  payer  = "Requester"
}

resource "aws_s3_bucket_policy" "snapshots" {
  bucket     = aws_s3_bucket.snapshots.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.snapshots]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "CloudFrontReadsTheStore"
    actions   = ["s3:GetObject"]
    resources = [for k in local.readable : "${aws_s3_bucket.snapshots.arn}/${k}"]
    principals {
      type        = "Service"
      identifiers = ["cloudfront.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "AWS:SourceArn"
      values   = [aws_cloudfront_distribution.snapshots.arn]
    }
  }
  statement {
    sid       = "DenyPlainHttp"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.snapshots.arn, "${aws_s3_bucket.snapshots.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_cloudfront_origin_access_control" "snapshots" {
  name                              = "${var.name}-qsync"
  description                       = "CloudFront reads the qsync store in ${local.bucket_name}"
  origin_access_control_origin_type = "s3"
  signing_behavior                  = "always"
  signing_protocol                  = "sigv4"
}

# Two cache lifetimes: chunks, manifests and signatures are content-addressed
# or written once; pointers and the catalog are rewritten in place (and the
# agent invalidates them after each publish).
locals {
  cache_policies = {
    immutable = { comment = "qsync chunks, manifests and signatures: never change", min = 86400, ttl = 31536000 }
    pointer   = { comment = "qsync pointers and catalog: rewritten in place", min = 0, ttl = var.pointer_max_age }
  }
}

resource "aws_cloudfront_cache_policy" "qsync" {
  for_each    = local.cache_policies
  name        = "${var.name}-qsync-${each.key}"
  comment     = each.value.comment
  min_ttl     = each.value.min
  default_ttl = each.value.ttl
  max_ttl     = each.value.ttl
  parameters_in_cache_key_and_forwarded_to_origin {
    cookies_config {
      cookie_behavior = "none"
    }
    headers_config {
      header_behavior = "none"
    }
    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

data "aws_cloudfront_response_headers_policy" "security" {
  name = "Managed-SecurityHeadersPolicy"
}

resource "aws_cloudfront_distribution" "snapshots" {
  #checkov:skip=CKV_AWS_68: a WAF in front of public, signed, read-only objects adds cost and no protection qsync lacks (every byte is verified against the publisher's key); attach one with web_acl_id if policy requires
  #checkov:skip=CKV2_AWS_47: no WAF (above), and no application behind the distribution that Log4j could reach
  #checkov:skip=CKV_AWS_86: access logs are the operator's choice (a log bucket); the download alarm watches volume
  #checkov:skip=CKV_AWS_310: one origin; other mirrors are qsync's own failover (several --from)
  #checkov:skip=CKV_AWS_174: the default *.cloudfront.net certificate cannot pin a TLS policy; with your own domain and ACM certificate set minimum_protocol_version = "TLSv1.2_2021"
  #checkov:skip=CKV_AWS_374: geo restriction is a business decision, not a default
  #checkov:skip=CKV2_AWS_42: custom domains and certificates are deployment-specific
  #checkov:skip=CKV_AWS_305: a store, not a website: there is no index page, and fetchers request keys by name
  enabled         = true
  comment         = "${var.name} qsync snapshots"
  price_class     = var.price_class
  http_version    = "http2and3"
  is_ipv6_enabled = true
  tags            = var.tags

  origin {
    origin_id                = "snapshots"
    domain_name              = aws_s3_bucket.snapshots.bucket_regional_domain_name
    origin_access_control_id = aws_cloudfront_origin_access_control.snapshots.id
  }

  default_cache_behavior {
    target_origin_id           = "snapshots"
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD"]
    cached_methods             = ["GET", "HEAD"]
    cache_policy_id            = aws_cloudfront_cache_policy.qsync["immutable"].id
    response_headers_policy_id = data.aws_cloudfront_response_headers_policy.security.id
    # Chunks are already zstd or incompressible.
    compress = false
  }

  # Pointers and the catalog: rewritten in place, cached briefly.
  dynamic "ordered_cache_behavior" {
    for_each = ["${local.key_prefix}chains/*/latest.json", "${local.key_prefix}catalog.json"]
    content {
      path_pattern               = ordered_cache_behavior.value
      target_origin_id           = "snapshots"
      viewer_protocol_policy     = "redirect-to-https"
      allowed_methods            = ["GET", "HEAD"]
      cached_methods             = ["GET", "HEAD"]
      cache_policy_id            = aws_cloudfront_cache_policy.qsync["pointer"].id
      response_headers_policy_id = data.aws_cloudfront_response_headers_policy.security.id
      compress                   = true
    }
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    cloudfront_default_certificate = true
  }
}

data "aws_iam_policy_document" "publisher" {
  statement {
    sid = "WriteTheStore"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.snapshots.arn}/${local.key_prefix}*"]
  }
  statement {
    sid       = "ListTheStore"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.snapshots.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.key_prefix}*"]
    }
  }
  statement {
    sid       = "InvalidatePointers"
    actions   = ["cloudfront:CreateInvalidation"]
    resources = [aws_cloudfront_distribution.snapshots.arn]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseTheBucketKey"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "publisher" {
  name        = "${var.name}-qsync-publisher"
  description = "qsync agent: publish snapshots to ${local.store_url}, collect garbage, invalidate pointers"
  policy      = data.aws_iam_policy_document.publisher.json
  tags        = var.tags
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ReadTheStore"
    actions   = ["s3:GetObject"]
    resources = [for k in local.readable : "${aws_s3_bucket.snapshots.arn}/${k}"]
  }
  statement {
    sid       = "TellMissingFromForbidden"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.snapshots.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.key_prefix}*"]
    }
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptWithTheBucketKey"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "reader" {
  name        = "${var.name}-qsync-reader"
  description = "qsync restore straight from ${local.store_url}"
  policy      = data.aws_iam_policy_document.reader.json
  tags        = var.tags
}

# CloudFront publishes its metrics in us-east-1 only, with Region = Global.
resource "aws_cloudwatch_metric_alarm" "downloads" {
  provider            = aws.us_east_1
  alarm_name          = "${var.name}-qsync-downloads"
  alarm_description   = "CloudFront served more than ${var.download_alarm_bytes} bytes of ${var.name} snapshots within ${var.download_alarm_period} s"
  namespace           = "AWS/CloudFront"
  metric_name         = "BytesDownloaded"
  dimensions          = { DistributionId = aws_cloudfront_distribution.snapshots.id, Region = "Global" }
  statistic           = "Sum"
  period              = var.download_alarm_period
  evaluation_periods  = 1
  threshold           = var.download_alarm_bytes
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}
